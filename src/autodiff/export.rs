//! Graphviz export of a recorded tensor graph: op, shape and gradient norm per node,
//! nodes grouped into one cluster per scope (a layer), so that an MLP reads as a chain
//! of boxes rather than a hairball.

use super::{Gradients, Tape};
use crate::tensor::Element;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The tape as DOT. `grads` (from [`Tape::backward_keep_all`]) adds each node's gradient
/// norm. A node's cluster is its scope, or for a labelled leaf such as `layer0.weight`,
/// the part of the label before the first dot.
pub fn graph_dot<T: Element>(tape: &Tape<T>, grads: Option<&Gradients<T>>) -> String {
    let nodes = tape.nodes();
    let mut clusters: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut free = Vec::new();
    for n in &nodes {
        let title = match (&n.label, n.op.as_str()) {
            (Some(l), "leaf" | "constant") => format!("{} {l}", n.op),
            _ => n.op.clone(),
        };
        let mut label = format!("v{}: {}\\n{:?}", n.id, title, n.value.shape());
        if n.value.len() == 1 {
            let _ = write!(label, "\\nvalue {:.4}", n.value.data()[0].as_f64());
        }
        if let Some(g) = grads.and_then(|g| g.by_id(n.id)) {
            let _ = write!(label, "\\n|grad| {:.3e}", g.norm());
        }
        let style = match n.op.as_str() {
            "leaf" => ", style=filled, fillcolor=\"#dbe9f6\"",
            "constant" => ", style=filled, fillcolor=\"#eeeeee\"",
            _ => "",
        };
        let line = format!(
            "    v{} [label=\"{}\"{style}];",
            n.id,
            label.replace('"', "'")
        );
        match &n.label {
            Some(l) => clusters
                .entry(l.split('.').next().unwrap_or(l).to_string())
                .or_default()
                .push(line),
            None => free.push(line),
        }
    }
    let mut s = String::from(
        "digraph tape {\n  rankdir=TB;\n  node [shape=box, fontname=\"monospace\", fontsize=10];\n",
    );
    for (i, (name, lines)) in clusters.iter().enumerate() {
        let _ = writeln!(
            s,
            "  subgraph cluster_{i} {{\n    label=\"{name}\";\n    style=rounded;"
        );
        for l in lines {
            let _ = writeln!(s, "{l}");
        }
        s.push_str("  }\n");
    }
    for l in &free {
        let _ = writeln!(s, "{}", &l[2..]);
    }
    for n in &nodes {
        for &i in &n.inputs {
            let _ = writeln!(s, "  v{i} -> v{};", n.id);
        }
    }
    s.push_str("}\n");
    s
}
