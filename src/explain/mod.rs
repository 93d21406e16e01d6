//! `chainrule explain`: record a scalar expression on the same tape the library uses,
//! then show the forward pass node by node and the reverse sweep edge by edge — each
//! edge u → v carries the local derivative ∂v/∂u, the contribution v̄·∂v/∂u, and the
//! running sum ū where u feeds several nodes — and compare the gradient with forward
//! mode (dual numbers) and central differences.

mod parse;

pub use parse::{Expr, parse};

use crate::autodiff::{Tape, Var};
use crate::error::{Error, Result};
use crate::scalar::{Dual, Real};
use crate::tensor::{BinaryOp, Tensor};
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
    /// ∂v/∂u as a formula.
    pub formula: String,
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
            Expr::Var(n) => Ok(Dual::new(at[n], if n == seed { 1.0 } else { 0.0 })),
            _ => unreachable!(),
        },
        &mut |x, a| {
            Ok(match x {
                Expr::Neg(_) => -a[0],
                Expr::Call(op, _) => a[0].unary(*op),
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

fn eval(e: &Expr, at: &BTreeMap<String, f64>) -> Result<f64> {
    Ok(eval_dual(e, at, "")?.v)
}

/// Records `e` on `tape`: one leaf per variable (in order of appearance), then the ops.
fn record<'t>(
    e: &Expr,
    tape: &'t Tape<f64>,
    vars: &BTreeMap<String, Var<'t, f64>>,
) -> Result<Var<'t, f64>> {
    let scalar = |v: f64| Tensor::scalar(v);
    fold(
        e,
        &mut |x| match x {
            Expr::Num(v) => Ok(tape.constant(scalar(*v))),
            Expr::Var(n) => Ok(vars[n]),
            _ => unreachable!(),
        },
        &mut |x, a| match x {
            Expr::Neg(_) => Ok(a[0].neg()),
            Expr::Call(op, _) => Ok(a[0].unary(*op)),
            // a constant exponent is powf (its derivative needs no logarithm of the base)
            Expr::Bin('^', _, b) if matches!(**b, Expr::Num(_)) => {
                let Expr::Num(p) = **b else { unreachable!() };
                Ok(a[0].powf(p))
            }
            Expr::Bin(c, ..) => a[0].binary(binary_of(*c), a[1]),
            Expr::MaxMin(true, ..) => a[0].maximum(a[1]),
            Expr::MaxMin(false, ..) => a[0].minimum(a[1]),
            _ => unreachable!(),
        },
    )
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

/// Records, sweeps and checks `expression` at the point `at`.
pub fn explain(expression: &str, at: &BTreeMap<String, f64>) -> Result<Walk> {
    let e = parse(expression)?;
    let names = e.variables();
    if let Some(missing) = names.iter().find(|n| !at.contains_key(*n)) {
        return Err(Error::invalid(
            "explain",
            format!("variable '{missing}' has no value; give it with --at {missing}=..."),
        ));
    }
    let tape = Tape::<f64>::new();
    let vars: BTreeMap<String, Var<'_, f64>> = names
        .iter()
        .map(|n| (n.clone(), tape.var(Tensor::scalar(at[n]))))
        .collect();
    let out = record(&e, &tape, &vars)?;
    let grads = tape.backward_keep_all(out)?;
    let nodes = tape.nodes();
    let label_of_leaf: BTreeMap<usize, &str> =
        vars.iter().map(|(n, v)| (v.id(), n.as_str())).collect();
    let forward: Vec<ForwardNode> = nodes
        .iter()
        .map(|n| ForwardNode {
            id: n.id,
            op: n.op.clone(),
            label: match n.op.as_str() {
                "leaf" => label_of_leaf.get(&n.id).copied().unwrap_or("?").to_string(),
                "constant" => format!("{}", n.value.data()[0]),
                _ => String::new(),
            },
            inputs: n.inputs.clone(),
            value: n.value.data()[0],
        })
        .collect();
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
            edges.push(Edge {
                from: u,
                to: v,
                op: nodes[v].op.clone(),
                arg,
                formula,
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
        gradient.insert(name.clone(), reverse);
        check.push(GradientCheck {
            name: name.clone(),
            reverse,
            forward: forward_mode,
            finite_diff: fd,
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

fn nodes_with_two(forward: &[ForwardNode], id: usize) -> bool {
    forward[id].inputs.len() == 2
}

fn fmt_num(v: f64) -> String {
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
        let name = |id: usize| format!("v{id}");
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
        let _ = writeln!(
            s,
            "  {:<6} {:<10} {:<14} {:>14}",
            "node", "op", "inputs", "value"
        );
        for n in self.forward.iter().take(lim) {
            let inputs = if n.inputs.is_empty() {
                n.label.clone()
            } else {
                n.inputs
                    .iter()
                    .map(|&i| name(i))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(
                s,
                "  {:<6} {:<10} {:<14} {:>14}",
                name(n.id),
                n.op,
                inputs,
                fmt_num(n.value)
            );
        }
        if self.forward.len() > lim {
            let _ = writeln!(s, "  ... {} more nodes", self.forward.len() - lim);
        }
        let _ = writeln!(
            s,
            "\nreverse sweep ({} edges, from the output back; v̄ = ∂out/∂v)",
            self.edges.len()
        );
        let _ = writeln!(
            s,
            "  {:<13} {:<38} {:>10} {:>10} {:>10}",
            "edge u→v", "local derivative ∂v/∂u", "v̄", "v̄·∂v/∂u", "ū so far"
        );
        for e in self.edges.iter().take(lim) {
            let wrt = match (nodes_with_two(&self.forward, e.to), e.arg) {
                (false, _) => "x",
                (true, 0) => "a",
                (true, _) => "b",
            };
            let local = format!("{} ∂/∂{wrt}: {} = {}", e.op, e.formula, fmt_num(e.local));
            let acc = if e.count > 1 {
                format!("(sum of {})", e.count)
            } else {
                String::new()
            };
            let _ = writeln!(
                s,
                "  {:<13} {:<38} {:>10} {:>10} {:>10}  {}",
                format!("{}→{}", name(e.from), name(e.to)),
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
        s.lines().map(|l| format!("{}\n", l.trim_end())).collect()
    }

    /// Graphviz DOT: nodes with op, value and gradient; edges with local derivatives.
    pub fn to_dot(&self) -> String {
        let mut s = String::from(
            "digraph chainrule {\n  rankdir=LR;\n  node [shape=box, fontname=\"monospace\"];\n",
        );
        for n in &self.forward {
            let title = if n.label.is_empty() {
                n.op.clone()
            } else {
                format!("{} {}", n.op, n.label)
            };
            let _ = writeln!(
                s,
                "  v{} [label=\"v{}: {}\\nvalue {}\\ngrad {}\"];",
                n.id,
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
        assert!(e.contains("variable 'y' has no value"), "{e}");
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
}
