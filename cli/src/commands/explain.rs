//! `chainrule explain "EXPR" --at x=2,...`: the chain rule, edge by edge.

use chainrule::explain::{explain, parse_assignments};
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `chainrule explain`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The expression, e.g. "tanh(w*x + b)".
    expression: String,
    /// Values of the variables, e.g. x=2,w=-0.5,b=1.
    #[arg(long, allow_hyphen_values = true, default_value = "")]
    at: String,
    /// Print the walk as JSON (fields forward, edges, gradient, check).
    #[arg(long)]
    json: bool,
    /// Show only the first N nodes and edges of long walks.
    #[arg(long)]
    limit: Option<usize>,
    /// Write the graph as Graphviz DOT to this file.
    #[arg(long)]
    dot: Option<PathBuf>,
    /// Render the graph to SVG with Graphviz's `dot` program.
    #[arg(long)]
    svg: Option<PathBuf>,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let at = parse_assignments(&args.at)?;
    let parsed = chainrule::explain::parse(&args.expression)?;
    if let Some(missing) = parsed.variables().into_iter().find(|n| !at.contains_key(n)) {
        anyhow::bail!("variable '{missing}' has no value; give it with --at {missing}=...");
    }
    let walk = explain(&args.expression, &at)?;
    if args.json {
        let mut v = serde_json::to_value(&walk)?;
        v.as_object_mut().expect("object").remove("node_grads");
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("{}", walk.render(args.limit));
    }
    if let Some(path) = &args.dot {
        std::fs::write(path, walk.to_dot())
            .map_err(|e| anyhow::anyhow!("--dot {}: {e}", path.display()))?;
    }
    if let Some(path) = &args.svg {
        use std::io::Write;
        let child = std::process::Command::new("dot")
            .args(["-Tsvg", "-o"])
            .arg(path)
            .stdin(std::process::Stdio::piped())
            .spawn();
        let mut child = match child {
            Ok(c) => c,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                anyhow::bail!(
                    "--svg needs Graphviz's `dot` program, which is not installed (Debian/Ubuntu: apt-get install graphviz; macOS: brew install graphviz); --dot FILE writes the graph without it"
                )
            }
            Err(e) => anyhow::bail!("--svg: could not run `dot`: {e}"),
        };
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(walk.to_dot().as_bytes())?;
        let status = child.wait()?;
        if !status.success() {
            anyhow::bail!("--svg: `dot` failed with {status}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
