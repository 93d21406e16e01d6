//! The walk in the learner's names: what op nodes are called, each node as it is
//! written, each edge's rule with its operands' names and values, and why reverse mode
//! and central differences disagree where they do.

use super::{ForwardNode, Operand, fmt_num};

/// The prefix of op nodes' names: `v`, unless a variable is spelt `v` and digits (a
/// variable `v4` next to a node `v4` would make every rule ambiguous).
pub(super) fn node_prefix(variables: &[String]) -> String {
    let taken = |p: &str| {
        variables.iter().any(|v| {
            v.strip_prefix(p)
                .is_some_and(|rest| !rest.is_empty() && rest.chars().all(|c| c.is_ascii_digit()))
        })
    };
    let mut prefix = ["v", "u", "t", "n"]
        .into_iter()
        .find(|p| !taken(p))
        .unwrap_or("v_")
        .to_string();
    while taken(&prefix) {
        prefix.push('_');
    }
    prefix
}

/// An operand as it reads inside a larger expression: a negative constant bracketed.
fn operand(name: &str) -> String {
    if name.starts_with('-') {
        format!("({name})")
    } else {
        name.to_string()
    }
}

/// The node `op(args)` as a learner writes it.
pub(super) fn node_text(op: &str, args: &[&str]) -> String {
    let a: Vec<String> = args.iter().map(|s| operand(s)).collect();
    match (op, a.as_slice()) {
        ("add", [x, y]) => format!("{x} + {y}"),
        ("sub", [x, y]) => format!("{x} − {y}"),
        ("mul", [x, y]) => format!("{x} × {y}"),
        ("div", [x, y]) => format!("{x} / {y}"),
        ("pow" | "powf", [x, y]) => format!("{x}^{y}"),
        ("maximum", [x, y]) => format!("max({x}, {y})"),
        ("minimum", [x, y]) => format!("min({x}, {y})"),
        ("neg", [x]) => format!("−{x}"),
        _ => format!("{op}({})", args.join(", ")),
    }
}

/// The rule `formula` of an edge into node `v`, its placeholders replaced by the
/// operands' names (`x` and the exponent `p` of a one-input op; `a`, `b` and the
/// result `y` of a two-input one), and the values of the nodes it then names.
pub(super) fn rule_in_names(
    formula: &str,
    forward: &[ForwardNode],
    v: usize,
    exponent: Option<&(usize, f64)>,
) -> (String, Vec<Operand>) {
    let node = &forward[v];
    let mut places: Vec<(&str, usize)> = Vec::new();
    match (node.inputs.as_slice(), exponent) {
        ([x, p], Some(_)) => places.extend([("x", *x), ("p", *p)]),
        ([x], _) => places.push(("x", *x)),
        ([a, b], None) => places.extend([("a", *a), ("b", *b), ("y", v)]),
        _ => {}
    }
    // the table writes aᵇ with a superscript letter, which no placeholder search sees
    let mut formula = formula.replace("aᵇ", "a^b");
    // a rule that is one operand is that operand's name, bare: ∂(−2 × x)/∂x = -2
    if let Some(&(_, id)) = places.iter().find(|(p, _)| *p == formula.trim()) {
        let name = forward[id].name.clone();
        let operands = if forward[id].op == "constant" {
            Vec::new()
        } else {
            vec![Operand {
                name: name.clone(),
                value: forward[id].value,
            }]
        };
        return (name, operands);
    }
    // the table's remark on the rule's edge cases ("PyTorch's: 0 where a = 0 ...") puts
    // its placeholders in conditions, which no substitution makes read right (2 = 0):
    // such a remark is left out; one in words ("½ at a tie") stays
    let mut remark = String::new();
    if let Some(cut) = formula.find(" (") {
        let conditions = places.iter().any(|(p, _)| {
            [" =", " <", " >", " ≥", " ≤"]
                .iter()
                .any(|op| formula[cut..].contains(&format!(" {p}{op}")))
        });
        if !conditions {
            remark = formula[cut..].to_string();
        }
        formula.truncate(cut);
    }
    let mut out = String::new();
    let mut named: Vec<usize> = Vec::new();
    let chars: Vec<char> = formula.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            match places.iter().find(|(p, _)| *p == word) {
                Some(&(_, id)) => {
                    out.push_str(&operand(&forward[id].name));
                    if forward[id].op != "constant" && !named.contains(&id) {
                        named.push(id);
                    }
                }
                None => out.push_str(&word),
            }
        } else if c.is_ascii_digit() {
            // a number's digits, never a placeholder: 0.044715x³ is 0.044715 and x³
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                out.push(chars[i]);
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    let operands = named
        .into_iter()
        .map(|id| Operand {
            name: forward[id].name.clone(),
            value: forward[id].value,
        })
        .collect();
    out.push_str(&remark);
    (out, operands)
}

/// Whether reverse mode and central differences differ by more than the differences'
/// own error can explain (either not finite counts as differing).
pub(super) fn disagree(reverse: f64, fd: f64) -> bool {
    !(reverse.is_finite() && fd.is_finite())
        || (reverse - fd).abs() > 1e-6 * reverse.abs().max(fd.abs()).max(1.0)
}

/// Why reverse mode and central differences disagree for the variable at node `leaf`:
/// the first node (in forward order) that depends on it and is not smooth at this
/// point, or what is left when none is.
pub(super) fn why_they_disagree(
    forward: &[ForwardNode],
    leaf: usize,
    reverse: f64,
    fd: f64,
    h: f64,
) -> String {
    let mut depends = vec![false; forward.len()];
    depends[leaf] = true;
    // within the differences' step of a kink, they straddle it
    let near = |x: f64| x.abs() <= 4.0 * h;
    for n in forward.iter().skip(leaf + 1) {
        if !n.inputs.iter().any(|&i| depends[i]) {
            continue;
        }
        depends[n.id] = true;
        let arg = |k: usize| &forward[n.inputs[k]];
        let cause = match n.op.as_str() {
            "div" if arg(1).value == 0.0 => Some(format!(
                "{} = {} divides by zero ({} = 0): f is not finite here, so it has no slope for any method to find",
                n.name,
                n.text,
                arg(1).name
            )),
            _ if !n.value.is_finite() => Some(format!(
                "{} = {} is not finite here ({}): f has no slope for any method to find",
                n.name,
                n.text,
                fmt_num(n.value)
            )),
            "relu" | "abs" if near(arg(0).value) => Some(format!(
                "{} = {} sits at its kink ({} = {}): the tape uses the rule's value there, {}, while central differences straddle the kink and average the slopes of its two sides",
                n.name,
                n.text,
                arg(0).name,
                fmt_num(arg(0).value),
                if n.op == "relu" {
                    "0 (1 only where the input is > 0)"
                } else {
                    "sign(0) = 0"
                }
            )),
            "maximum" | "minimum" if near(arg(0).value - arg(1).value) => Some(format!(
                "{} = {} is at a tie ({} = {} = {}): the tape splits the gradient evenly between the two, while central differences see whichever side wins on each side of the tie",
                n.name,
                n.text,
                arg(0).name,
                arg(1).name,
                fmt_num(arg(0).value)
            )),
            "sqrt" | "ln" if near(arg(0).value) => Some(format!(
                "{} = {} is at {} = {}, where its slope is infinite: no finite number is the derivative",
                n.name,
                n.text,
                arg(0).name,
                fmt_num(arg(0).value)
            )),
            _ => None,
        };
        if let Some(cause) = cause {
            return format!("reverse mode and central differences disagree: {cause}.");
        }
    }
    format!(
        "reverse mode ({}) and central differences ({}) differ by more than the differences' own error (about h² and ε/h, with h = {}): f bends sharply within h of this point.",
        fmt_num(reverse),
        fmt_num(fd),
        fmt_num(h)
    )
}
