//! `chainrule explain`: record a scalar expression on the same tape the library uses,
//! then show the forward pass node by node and the reverse sweep edge by edge — each
//! edge u → v carries the local derivative ∂v/∂u, the contribution v̄·∂v/∂u, and the
//! running sum ū where u feeds several nodes — and compare the gradient with forward
//! mode (dual numbers) and central differences.

mod names;
mod parse;

use names::{disagree, node_prefix, node_text, rule_in_names, why_they_disagree};
pub use parse::{Expr, OPERATORS, functions, parse};

use crate::autodiff::{Tape, Var};
use crate::error::{Error, Result};
use crate::scalar::{Dual, Real};
use crate::tensor::{BinaryOp, Tensor, UnaryOp};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One node of the forward pass.
#[derive(Clone, Debug, Serialize)]
pub struct ForwardNode {
    /// Node id on the tape.
    pub id: usize,
    /// The op (`leaf`, `constant`, `mul`, `tanh`...).
    pub op: String,
    /// The variable name or constant, for leaves.
    pub label: String,
    /// What the walk calls the node: a variable's name, a constant's value, or a
    /// prefix and the id (`v3`; another prefix where a variable is spelt like that).
    pub name: String,
    /// The node as the learner writes it, in its inputs' names (`w × x`, `x^2`,
    /// `tanh(v4)`); a leaf's name.
    pub text: String,
    /// Ids of the inputs.
    pub inputs: Vec<usize>,
    /// The value.
    pub value: f64,
}

/// One edge u → v of the reverse sweep.
#[derive(Clone, Debug, Serialize)]
pub struct Edge {
    /// The input u.
    pub from: usize,
    /// The consumer v.
    pub to: usize,
    /// v's op.
    pub op: String,
    /// Which argument of v's op u is (0: `a`/`x`, 1: `b`).
    pub arg: usize,
    /// ∂v/∂u as the elementwise table writes the rule, in its placeholders (`a`, `b`,
    /// `x`, `p`).
    pub formula: String,
    /// The same rule in the operands' own names (`x` for ∂(w × x)/∂w, `2·x^(2-1)` for
    /// `x^2`): what the walk shows.
    pub rule: String,
    /// The values of the nodes the rule names (constants are their own value).
    pub operands: Vec<Operand>,
    /// ∂v/∂u as a number.
    pub local: f64,
    /// v̄, the gradient arriving at v.
    pub upstream: f64,
    /// v̄ · ∂v/∂u.
    pub contribution: f64,
    /// ū after adding this contribution.
    pub running: f64,
    /// How many contributions u has received so far (2 or more: accumulation).
    pub count: usize,
}

/// A node the rule of an edge names, with its value.
#[derive(Clone, Debug, Serialize)]
pub struct Operand {
    /// The node's name in the walk.
    pub name: String,
    /// Its value.
    pub value: f64,
}

/// The gradient with respect to one variable by the three methods.
#[derive(Clone, Debug, Serialize)]
pub struct GradientCheck {
    /// The variable.
    pub name: String,
    /// Reverse mode (the tape).
    pub reverse: f64,
    /// Forward mode (dual numbers).
    pub forward: f64,
    /// Central differences.
    pub finite_diff: f64,
    /// Why reverse mode and central differences disagree, where they do (a kink, a
    /// tie of max or min, a division by zero); `None` where they agree.
    pub note: Option<String>,
}

/// The whole walk.
#[derive(Clone, Debug, Serialize)]
pub struct Walk {
    /// The expression as given.
    pub expression: String,
    /// Its value.
    pub value: f64,
    /// The forward pass.
    pub forward: Vec<ForwardNode>,
    /// The reverse sweep, in the order it runs.
    pub edges: Vec<Edge>,
    /// Reverse-mode gradient by variable name.
    pub gradient: BTreeMap<String, f64>,
    /// The three methods side by side.
    pub check: Vec<GradientCheck>,
    /// Gradient of every node (v̄), by id.
    pub node_grads: Vec<f64>,
}

/// Evaluates `e` bottom-up without recursion: `leaf` for numbers and variables, `node`
/// for everything else with its children's results.
fn fold<V>(
    e: &Expr,
    leaf: &mut dyn FnMut(&Expr) -> Result<V>,
    node: &mut dyn FnMut(&Expr, Vec<V>) -> Result<V>,
) -> Result<V> {
    enum Step<'a> {
        Visit(&'a Expr),
        Combine(&'a Expr, usize),
    }
    let mut todo = vec![Step::Visit(e)];
    let mut values: Vec<V> = Vec::new();
    while let Some(step) = todo.pop() {
        match step {
            Step::Visit(x) => match x {
                Expr::Num(_) | Expr::Var(_) => values.push(leaf(x)?),
                // `-2` is one constant, not the negation of one: `x^-2` is a power
                Expr::Neg(a) if matches!(**a, Expr::Num(_)) => values.push(leaf(x)?),
                Expr::Neg(a) | Expr::Call(_, a) => {
                    todo.push(Step::Combine(x, 1));
                    todo.push(Step::Visit(a));
                }
                Expr::Bin(_, a, b) | Expr::MaxMin(_, a, b) => {
                    todo.push(Step::Combine(x, 2));
                    todo.push(Step::Visit(b));
                    todo.push(Step::Visit(a));
                }
            },
            Step::Combine(x, n) => {
                let args = values.split_off(values.len() - n);
                values.push(node(x, args)?);
            }
        }
    }
    Ok(values.pop().expect("one result"))
}

fn binary_of(c: char) -> BinaryOp {
    match c {
        '+' => BinaryOp::Add,
        '-' => BinaryOp::Sub,
        '*' => BinaryOp::Mul,
        '/' => BinaryOp::Div,
        _ => BinaryOp::Pow,
    }
}

/// Forward mode: the value and the derivative along `seed` (one 1 per variable), on the
/// library's dual numbers, whose every op takes its rule from the same table as reverse
/// mode.
fn eval_dual(e: &Expr, at: &BTreeMap<String, f64>, seed: &str) -> Result<Dual<f64>> {
    fold(
        e,
        &mut |x| match x {
            Expr::Num(v) => Ok(Dual::new(*v, 0.0)),
            Expr::Neg(a) => Ok(Dual::new(-literal(a), 0.0)),
            Expr::Var(n) => Ok(Dual::new(at[n], if n == seed { 1.0 } else { 0.0 })),
            _ => unreachable!(),
        },
        &mut |x, a| {
            Ok(match x {
                Expr::Neg(_) => -a[0],
                Expr::Call(op, _) => a[0].unary(*op),
                // as recorded: a constant exponent is powf, with its rule (x⁰'s slope is 0)
                Expr::Bin('^', _, b) if is_literal(b) => a[0].unary(UnaryOp::PowF(a[1].v)),
                Expr::Bin(c, ..) => a[0].binary(binary_of(*c), a[1]),
                Expr::MaxMin(is_max, ..) => {
                    let op = if *is_max {
                        BinaryOp::Maximum
                    } else {
                        BinaryOp::Minimum
                    };
                    a[0].binary(op, a[1])
                }
                _ => unreachable!(),
            })
        },
    )
}

/// The number of a literal (fold hands `Num` and negated `Num` to its leaf function).
fn literal(e: &Expr) -> f64 {
    match e {
        Expr::Num(v) => *v,
        _ => unreachable!("fold hands only literals here"),
    }
}

fn eval(e: &Expr, at: &BTreeMap<String, f64>) -> Result<f64> {
    Ok(eval_dual(e, at, "")?.v)
}

/// Records `e` on `tape`: one leaf per variable (in order of appearance), then the ops.
/// A constant exponent is recorded as `powf`, which reads it as a parameter rather than
/// as an input: `exponents` maps each such node to the constant's node, so the walk can
/// still draw the exponent's edge.
fn record<'t>(
    e: &Expr,
    tape: &'t Tape<f64>,
    vars: &BTreeMap<String, Var<'t, f64>>,
    exponents: &mut BTreeMap<usize, (usize, f64)>,
) -> Result<Var<'t, f64>> {
    let scalar = |v: f64| Tensor::scalar(v);
    fold(
        e,
        &mut |x| match x {
            Expr::Num(v) => Ok(tape.constant(scalar(*v))),
            Expr::Neg(a) => Ok(tape.constant(scalar(-literal(a)))),
            Expr::Var(n) => Ok(vars[n]),
            _ => unreachable!(),
        },
        &mut |x, a| match x {
            Expr::Neg(_) => Ok(a[0].neg()),
            Expr::Call(op, _) => Ok(a[0].unary(*op)),
            // a constant exponent is powf (its derivative needs no logarithm of the base)
            Expr::Bin('^', _, b) if is_literal(b) => {
                let p = a[1].value().data()[0];
                let out = a[0].powf(p);
                exponents.insert(out.id(), (a[1].id(), p));
                Ok(out)
            }
            Expr::Bin(c, ..) => a[0].binary(binary_of(*c), a[1]),
            Expr::MaxMin(true, ..) => a[0].maximum(a[1]),
            Expr::MaxMin(false, ..) => a[0].minimum(a[1]),
            _ => unreachable!(),
        },
    )
}

fn is_literal(e: &Expr) -> bool {
    match e {
        Expr::Num(_) => true,
        Expr::Neg(a) => matches!(**a, Expr::Num(_)),
        _ => false,
    }
}

/// Parses `at` as `x=2,w=-0.5`.
pub fn parse_assignments(at: &str) -> Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for part in at.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (name, value) = part.split_once('=').ok_or_else(|| {
            Error::invalid("explain", format!("--at: '{part}' is not NAME=VALUE"))
        })?;
        let v: f64 = value.trim().parse().map_err(|_| {
            Error::invalid(
                "explain",
                format!(
                    "--at: the value of '{}' ('{}') is not a number",
                    name.trim(),
                    value.trim()
                ),
            )
        })?;
        out.insert(name.trim().to_string(), v);
    }
    Ok(out)
}

/// The value of `expression` at the point `at`, in the walk's grammar: what the walk's
/// exercise reads a learner's answer with (a number, or a rule written in the walk's
/// names).
pub fn evaluate(expression: &str, at: &BTreeMap<String, f64>) -> Result<f64> {
    let e = parse(expression)?;
    if let Some(missing) = e.variables().into_iter().find(|n| !at.contains_key(n)) {
        return Err(Error::invalid(
            "explain",
            format!("'{missing}' is not a name of this walk"),
        ));
    }
    eval(&e, at)
}

/// Records, sweeps and checks `expression` at the point `at`.
pub fn explain(expression: &str, at: &BTreeMap<String, f64>) -> Result<Walk> {
    let e = parse(expression)?;
    let names = e.variables();
    if let Some(missing) = names.iter().find(|n| !at.contains_key(*n)) {
        return Err(Error::invalid(
            "explain",
            format!("variable '{missing}' has no value"),
        ));
    }
    let tape = Tape::<f64>::new();
    let vars: BTreeMap<String, Var<'_, f64>> = names
        .iter()
        .map(|n| (n.clone(), tape.var(Tensor::scalar(at[n]))))
        .collect();
    let mut exponents = BTreeMap::new();
    let out = record(&e, &tape, &vars, &mut exponents)?;
    let grads = tape.backward_keep_all(out)?;
    let nodes = tape.nodes();
    let label_of_leaf: BTreeMap<usize, &str> =
        vars.iter().map(|(n, v)| (v.id(), n.as_str())).collect();
    let prefix = node_prefix(&names);
    let mut forward: Vec<ForwardNode> = Vec::with_capacity(nodes.len());
    for n in &nodes {
        let label = match n.op.as_str() {
            "leaf" => label_of_leaf.get(&n.id).copied().unwrap_or("?").to_string(),
            "constant" => format!("{}", n.value.data()[0]),
            _ => String::new(),
        };
        let name = if label.is_empty() {
            format!("{prefix}{}", n.id)
        } else {
            label.clone()
        };
        let mut inputs = n.inputs.clone();
        if let Some(&(c, _)) = exponents.get(&n.id) {
            inputs.push(c);
        }
        let args: Vec<&str> = inputs.iter().map(|&i| forward[i].name.as_str()).collect();
        let text = if inputs.is_empty() {
            name.clone()
        } else {
            node_text(&n.op, &args)
        };
        forward.push(ForwardNode {
            id: n.id,
            op: n.op.clone(),
            label,
            name,
            text,
            inputs,
            value: n.value.data()[0],
        });
    }
    let node_grads: Vec<f64> = (0..nodes.len())
        .map(|i| grads.by_id(i).map(|g| g.data()[0]).unwrap_or(0.0))
        .collect();
    let mut running = vec![0.0; nodes.len()];
    let mut counts = vec![0usize; nodes.len()];
    let mut edges = Vec::new();
    for v in (0..nodes.len()).rev() {
        if nodes[v].inputs.is_empty() || node_grads[v] == 0.0 && !nodes[v].requires_grad {
            continue;
        }
        for (arg, (u, local, formula)) in tape.local_derivatives(v)?.into_iter().enumerate() {
            if !nodes[u].requires_grad {
                continue;
            }
            let contribution = node_grads[v] * local;
            running[u] += contribution;
            counts[u] += 1;
            let (rule, operands) = rule_in_names(&formula, &forward, v, exponents.get(&v));
            edges.push(Edge {
                from: u,
                to: v,
                op: nodes[v].op.clone(),
                arg,
                formula,
                rule,
                operands,
                local,
                upstream: node_grads[v],
                contribution,
                running: running[u],
                count: counts[u],
            });
        }
    }
    let mut gradient = BTreeMap::new();
    let mut check = Vec::new();
    for (name, var) in &vars {
        let reverse = grads.get(*var)?.map(|g| g.data()[0]).unwrap_or(0.0);
        let forward_mode = eval_dual(&e, at, name)?.d;
        let h = 1e-6 * at[name].abs().max(1.0);
        let mut plus = at.clone();
        *plus.get_mut(name).expect("present") += h;
        let mut minus = at.clone();
        *minus.get_mut(name).expect("present") -= h;
        let fd = (eval(&e, &plus)? - eval(&e, &minus)?) / (2.0 * h);
        let note = if disagree(reverse, fd) {
            Some(why_they_disagree(&forward, var.id(), reverse, fd, h))
        } else {
            None
        };
        gradient.insert(name.clone(), reverse);
        check.push(GradientCheck {
            name: name.clone(),
            reverse,
            forward: forward_mode,
            finite_diff: fd,
            note,
        });
    }
    Ok(Walk {
        expression: expression.to_string(),
        value: out.value().data()[0],
        forward,
        edges,
        gradient,
        check,
        node_grads,
    })
}

pub(super) fn fmt_num(v: f64) -> String {
    if v == 0.0 || (1e-4..1e6).contains(&v.abs()) {
        let s = format!("{v:.6}");
        let s = s.trim_end_matches('0').trim_end_matches('.');
        if s == "-0" { "0".into() } else { s.to_string() }
    } else {
        format!("{v:.4e}")
    }
}

impl Walk {
    /// The walk as aligned text; `limit` keeps the first `limit` lines of each table.
    pub fn render(&self, limit: Option<usize>) -> String {
        let mut s = String::new();
        let lim = limit.unwrap_or(usize::MAX);
        let name = |id: usize| self.forward[id].name.as_str();
        let shown: String = if self.expression.chars().count() > 90 {
            format!(
                "{}… ({} characters)",
                self.expression.chars().take(60).collect::<String>(),
                self.expression.chars().count()
            )
        } else {
            self.expression.clone()
        };
        let _ = writeln!(s, "{shown} = {}", fmt_num(self.value));
        let _ = writeln!(s, "\nforward pass ({} nodes)", self.forward.len());
        let _ = writeln!(s, "  {:<6} {:<24} {:>14}", "node", "computes", "value");
        for n in self.forward.iter().take(lim) {
            let what = match n.op.as_str() {
                "leaf" => "variable".to_string(),
                "constant" => "constant".to_string(),
                _ => n.text.clone(),
            };
            let _ = writeln!(s, "  {:<6} {:<24} {:>14}", n.name, what, fmt_num(n.value));
        }
        if self.forward.len() > lim {
            let _ = writeln!(s, "  ... {} more nodes", self.forward.len() - lim);
        }
        let _ = writeln!(
            s,
            "\nreverse sweep ({} edges, from the output back; v̄ = ∂f/∂v)",
            self.edges.len()
        );
        let rows: Vec<(String, String, &Edge)> = self
            .edges
            .iter()
            .take(lim)
            .map(|e| {
                let values: Vec<String> = e
                    .operands
                    .iter()
                    .filter(|o| o.name != e.rule)
                    .map(|o| format!("{} = {}", o.name, fmt_num(o.value)))
                    .collect();
                let at = if values.is_empty() {
                    String::new()
                } else {
                    format!(" ({})", values.join(", "))
                };
                let value = fmt_num(e.local);
                // a constant rule (1, -1) is its own value: say it once
                let local = if e.rule == value {
                    format!("∂{}/∂{} = {value}", name(e.to), name(e.from))
                } else {
                    format!(
                        "∂{}/∂{} = {}{at} = {value}",
                        name(e.to),
                        name(e.from),
                        e.rule
                    )
                };
                (format!("{}→{}", name(e.from), name(e.to)), local, e)
            })
            .collect();
        // the rules' lengths vary with the learner's names: the columns follow them
        let ew = rows
            .iter()
            .map(|r| r.0.chars().count())
            .fold(13, usize::max);
        let lw = rows
            .iter()
            .map(|r| r.1.chars().count())
            .fold(38, usize::max);
        let _ = writeln!(
            s,
            "  {:<ew$} {:<lw$} {:>10} {:>10} {:>10}",
            "edge u→v", "local derivative ∂v/∂u", "v̄", "v̄·∂v/∂u", "ū so far"
        );
        for (edge, local, e) in &rows {
            let acc = if e.count > 1 {
                format!("(sum of {})", e.count)
            } else {
                String::new()
            };
            let _ = writeln!(
                s,
                "  {:<ew$} {:<lw$} {:>10} {:>10} {:>10}  {}",
                edge,
                local,
                fmt_num(e.upstream),
                fmt_num(e.contribution),
                fmt_num(e.running),
                acc
            );
        }
        if self.edges.len() > lim {
            let _ = writeln!(s, "  ... {} more edges", self.edges.len() - lim);
        }
        let _ = writeln!(s, "\ngradient");
        let _ = writeln!(
            s,
            "  {:<10} {:>14} {:>14} {:>14} {:>11} {:>11}",
            "variable", "reverse", "forward", "central diff", "|rev-fwd|", "|rev-diff|"
        );
        for c in &self.check {
            let _ = writeln!(
                s,
                "  {:<10} {:>14} {:>14} {:>14} {:>11.1e} {:>11.1e}",
                c.name,
                fmt_num(c.reverse),
                fmt_num(c.forward),
                fmt_num(c.finite_diff),
                (c.reverse - c.forward).abs(),
                (c.reverse - c.finite_diff).abs()
            );
        }
        for c in &self.check {
            if let Some(note) = &c.note {
                let _ = writeln!(s, "  ∂f/∂{}: {note}", c.name);
            }
        }
        s.lines().map(|l| format!("{}\n", l.trim_end())).collect()
    }

    /// Graphviz DOT: nodes with op, value and gradient; edges with local derivatives.
    pub fn to_dot(&self) -> String {
        let mut s = String::from(
            "digraph chainrule {\n  rankdir=LR;\n  node [shape=box, fontname=\"monospace\"];\n",
        );
        for n in &self.forward {
            let title = match n.op.as_str() {
                "leaf" => n.name.clone(),
                "constant" => format!("constant {}", n.name),
                _ => format!("{} = {}", n.name, n.text),
            };
            let _ = writeln!(
                s,
                "  v{} [label=\"{}\\nvalue {}\\ngrad {}\"];",
                n.id,
                title.replace('"', "'"),
                fmt_num(n.value),
                fmt_num(self.node_grads[n.id])
            );
        }
        for e in &self.edges {
            let _ = writeln!(
                s,
                "  v{} -> v{} [label=\"{}\"];",
                e.from,
                e.to,
                fmt_num(e.local)
            );
        }
        // a constant's value flows in along its edge, but no gradient flows back
        for n in &self.forward {
            for &c in n
                .inputs
                .iter()
                .filter(|&&i| self.forward[i].op == "constant")
            {
                let _ = writeln!(s, "  v{c} -> v{} [style=dashed];", n.id);
            }
        }
        s.push_str("}\n");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn every_function_agrees_with_forward_mode_and_finite_differences() {
        let cases = [
            "exp(x*y)",
            "ln(x + 2)",
            "sqrt(x*x + y)",
            "abs(x - 3*y)",
            "sin(x)*cos(y)",
            "tanh(w*x + b)",
            "sigmoid(x - y)",
            "relu(x) + relu(-y)",
            "max(x, y) * min(x, 2*y)",
            "x^3 - y^-2",
            "x^y",
            "x / (1 + y^2)",
            "-(x*y)",
        ];
        let p = at(&[("x", 1.3), ("y", 0.7), ("w", -0.5), ("b", 1.0)]);
        for expr in cases {
            let w = explain(expr, &p).unwrap();
            for c in &w.check {
                let scale = c.reverse.abs().max(1.0);
                assert!(
                    (c.reverse - c.forward).abs() <= 1e-12 * scale,
                    "{expr}: {c:?}"
                );
                assert!(
                    (c.reverse - c.finite_diff).abs() <= 1e-7 * scale,
                    "{expr}: {c:?}"
                );
            }
        }
    }

    #[test]
    fn a_variable_used_twice_accumulates_visibly() {
        let w = explain("x*x + x", &at(&[("x", 3.0)])).unwrap();
        assert_eq!(w.gradient["x"], 7.0);
        let into_x: Vec<&Edge> = w.edges.iter().filter(|e| e.from == 0).collect();
        assert_eq!(into_x.len(), 3);
        assert_eq!(into_x.last().unwrap().running, 7.0);
        assert_eq!(into_x.last().unwrap().count, 3);
        let dot = w.to_dot();
        assert!(
            dot.starts_with("digraph") && dot.matches("->").count() == 4,
            "{dot}"
        );
    }

    #[test]
    fn missing_values_and_bad_assignments_are_named() {
        let e = explain("x + y", &at(&[("x", 1.0)]))
            .unwrap_err()
            .to_string();
        // the library's message is the program's and the page's: no flag of either
        assert!(
            e.contains("variable 'y' has no value") && !e.contains("--at"),
            "{e}"
        );
        assert!(
            parse_assignments("x=2,w")
                .unwrap_err()
                .to_string()
                .contains("'w' is not NAME=VALUE")
        );
        assert!(
            parse_assignments("x=abc")
                .unwrap_err()
                .to_string()
                .contains("('abc') is not a number")
        );
    }
    fn edge<'w>(w: &'w Walk, from: &str, to_text: &str) -> &'w Edge {
        w.edges
            .iter()
            .find(|e| w.forward[e.from].name == from && w.forward[e.to].text == to_text)
            .unwrap_or_else(|| panic!("no edge {from} → {to_text} in {:#?}", w.forward))
    }

    #[test]
    fn rules_are_shown_in_the_operands_names_and_values() {
        let w = explain("tanh(w*x + b)", &at(&[("x", 2.0), ("w", -0.5), ("b", 1.5)])).unwrap();
        // ∂(w × x)/∂w is the other factor, x = 2: never the table's placeholder `b`
        let e = edge(&w, "w", "w × x");
        assert_eq!((e.rule.as_str(), e.local), ("x", 2.0));
        assert_eq!(e.operands.len(), 1);
        assert_eq!(
            (e.operands[0].name.as_str(), e.operands[0].value),
            ("x", 2.0)
        );
        let e = edge(&w, "v4", "tanh(v4)");
        assert_eq!(e.rule, "1 - tanh²(v4)");
        assert_eq!(e.operands[0].value, 0.5);
        // relu's rule is about its own input, the inner node −x, not the learner's x
        let w = explain("relu(-x)", &at(&[("x", 0.7)])).unwrap();
        let e = edge(&w, "v1", "relu(v1)");
        assert_eq!(e.rule, "1 if v1 > 0 else 0");
        assert_eq!(
            (e.operands[0].name.as_str(), e.operands[0].value),
            ("v1", -0.7)
        );
        assert_eq!(w.forward[1].text, "−x");
        // a variable spelt like a node: the nodes take another prefix
        let w = explain("v4*v1 + v4", &at(&[("v4", 2.0), ("v1", 3.0)])).unwrap();
        let names: Vec<&str> = w.forward.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["v4", "v1", "u2", "u3"]);
    }

    #[test]
    fn a_constant_exponent_is_a_node_with_its_edge_and_its_value_in_the_rule() {
        let w = explain("x^2", &at(&[("x", 3.0)])).unwrap();
        let power = w.forward.last().unwrap();
        assert_eq!(power.op, "powf");
        assert_eq!(power.text, "x^2");
        let c = &w.forward[power.inputs[1]];
        assert_eq!((c.op.as_str(), c.name.as_str()), ("constant", "2"));
        let e = edge(&w, "x", "x^2");
        assert_eq!((e.rule.as_str(), e.local), ("2·x^(2-1)", 6.0));
        // the graph export draws the exponent's edge too, dashed: no gradient flows back
        let dot = w.to_dot();
        assert!(
            dot.contains(&format!("v{} -> v{} [style=dashed];", c.id, power.id)),
            "{dot}"
        );
        // a negative exponent is one constant too, bracketed where it is read
        let w = explain("y^-2", &at(&[("y", 2.0)])).unwrap();
        assert_eq!(w.forward.len(), 3, "{:#?}", w.forward);
        assert_eq!(w.forward[2].text, "y^(-2)");
        assert_eq!(w.edges[0].rule, "(-2)·y^((-2)-1)");
        assert_eq!(w.gradient["y"], -0.25);
        // forward mode takes the same rule as the tape: x⁰'s slope at 0 is 0, not 0·0⁻¹
        let w = explain("x^0", &at(&[("x", 0.0)])).unwrap();
        assert_eq!((w.check[0].reverse, w.check[0].forward), (0.0, 0.0));
        // a rule that is one constant operand is that constant, bare
        let w = explain("-2*x", &at(&[("x", 1.0)])).unwrap();
        assert_eq!((w.edges[0].rule.as_str(), w.edges[0].local), ("-2", -2.0));
        // the table's remark in its placeholders is left out of the learner's rule
        let w = explain("2^x", &at(&[("x", 1.0)])).unwrap();
        assert_eq!(w.edges[0].rule, "2^x·ln(2)");
        let w = explain("max(x, y)", &at(&[("x", 2.0), ("y", 1.0)])).unwrap();
        assert_eq!(w.edges[0].rule, "1 if x > y (½ at a tie)");
    }

    #[test]
    fn an_answer_is_read_in_the_walks_grammar_and_names() {
        let p = at(&[("v4", 0.5), ("x", 2.0)]);
        let t = 0.5f64.tanh();
        assert_eq!(evaluate("1 - tanh(v4)^2", &p).unwrap(), 1.0 - t * t);
        assert_eq!(evaluate("x", &p).unwrap(), 2.0);
        assert_eq!(evaluate("0.786", &p).unwrap(), 0.786);
        let e = evaluate("y + 1", &p).unwrap_err().to_string();
        assert!(e.contains("'y' is not a name of this walk"), "{e}");
        assert!(evaluate("1 +", &p).is_err());
    }

    #[test]
    fn a_kink_and_a_division_by_zero_say_why_the_methods_disagree() {
        let w = explain("relu(x) - relu(-x)", &at(&[("x", 0.0)])).unwrap();
        let c = &w.check[0];
        assert_eq!((c.reverse, c.finite_diff), (0.0, 1.0));
        let note = c.note.as_deref().unwrap();
        assert!(note.contains("relu(x) sits at its kink (x = 0)"), "{note}");
        let w = explain("1 / x", &at(&[("x", 0.0)])).unwrap();
        let note = w.check[0].note.as_deref().unwrap();
        assert!(note.contains("divides by zero (x = 0)"), "{note}");
        // max at a tie splits the gradient, ½ each: the differences' average agrees
        let w = explain("max(x, y)", &at(&[("x", 1.0), ("y", 1.0)])).unwrap();
        assert_eq!(w.check[0].reverse, 0.5);
        assert!(w.check.iter().all(|c| c.note.is_none()), "{:?}", w.check);
        // where they agree, no note
        let w = explain("tanh(w*x + b)", &at(&[("x", 2.0), ("w", -0.5), ("b", 1.5)])).unwrap();
        assert!(w.check.iter().all(|c| c.note.is_none()), "{:?}", w.check);
        assert!(!w.render(None).contains("disagree"));
    }
}
