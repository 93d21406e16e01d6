//! Places a computation graph on a grid, left to right: each op one column right of its
//! latest input, each leaf just left of its first consumer, and edges that span several
//! columns routed through waypoints, one edge per use of an input (x·x has two). The
//! order within a column comes from barycenter sweeps (Sugiyama's method), keeping the
//! order with the fewest crossings seen. Each edge's label gets a place near the edge
//! and off every node, in the page's pixels ([`GEOMETRY`]).

use serde::Serialize;

/// Where each node and edge of a graph goes. Columns and rows count from 0; rows are
/// centred, so a column with fewer nodes sits in the middle (rows can be fractional).
#[derive(Clone, Debug, Serialize)]
pub struct Layout {
    /// Column of each node, by id.
    pub col: Vec<usize>,
    /// Row of each node, by id.
    pub row: Vec<f64>,
    /// Number of columns.
    pub cols: usize,
    /// Number of rows of the tallest column.
    pub rows: usize,
    /// One entry per use of an input: the edge u → v for each argument of v that u is.
    pub paths: Vec<EdgePath>,
    /// Edge crossings between neighbouring columns in this layout.
    pub crossings: usize,
    /// The sizes the page draws with, in pixels.
    pub geometry: Geometry,
    /// The drawing's width, in pixels.
    pub width: f64,
    /// The drawing's height, in pixels (room for a label above and below the nodes).
    pub height: f64,
}

/// The route of the edge `from → to` for argument `arg` of `to`.
#[derive(Clone, Debug, Serialize)]
pub struct EdgePath {
    /// The input node.
    pub from: usize,
    /// The consumer.
    pub to: usize,
    /// Which of `to`'s inputs this edge is.
    pub arg: usize,
    /// `[column, row]` of every point, `from`'s first and `to`'s last.
    pub points: Vec<[f64; 2]>,
    /// How far below the middle of `to`'s left side the edge ends, in pixels: edges into
    /// one node end at different heights, in the order they arrive.
    pub end_dy: f64,
    /// The centre of the edge's label, in pixels: near the edge, off every node.
    pub label: [f64; 2],
}

/// The page's drawing sizes, in pixels.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Geometry {
    /// From one column's left side to the next one's.
    pub col_w: f64,
    /// From one row's top to the next one's.
    pub row_h: f64,
    /// A node's box.
    pub node_w: f64,
    /// A node's box.
    pub node_h: f64,
    /// Left and right margin.
    pub margin: f64,
    /// Room above the first row (and below the last) for a label.
    pub top: f64,
    /// An edge label's box: the page fits its text into it.
    pub label_w: f64,
    /// An edge label's box.
    pub label_h: f64,
}

/// The sizes the page draws the walk's graph with.
pub const GEOMETRY: Geometry = Geometry {
    col_w: 178.0,
    row_h: 84.0,
    node_w: 128.0,
    node_h: 58.0,
    margin: 8.0,
    top: 26.0,
    label_w: 168.0,
    label_h: 20.0,
};

/// Space kept between a label and a node's box.
const LABEL_GAP: f64 = 2.0;

/// Lays out the graph whose node `v` reads the nodes `inputs[v]` (ids below `v`, as on a
/// tape, where recording order is a topological order).
pub fn layout(inputs: &[Vec<usize>]) -> Layout {
    let n = inputs.len();
    let mut consumers = vec![Vec::new(); n];
    for (v, ins) in inputs.iter().enumerate() {
        for &u in ins {
            if !consumers[u].contains(&v) {
                consumers[u].push(v);
            }
        }
    }
    // columns: ops one right of their latest input; leaves one left of their first consumer
    let mut col = vec![0usize; n];
    for v in 0..n {
        col[v] = inputs[v].iter().map(|&u| col[u] + 1).max().unwrap_or(0);
    }
    for v in 0..n {
        if inputs[v].is_empty()
            && let Some(first) = consumers[v].iter().map(|&c| col[c]).min()
        {
            col[v] = first - 1;
        }
    }
    let cols = col.iter().max().map_or(0, |c| c + 1);
    // the grid with waypoints: vertices 0..n are nodes, the rest stand on long edges
    let mut vcol = col.clone();
    let mut succ: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut pred: Vec<Vec<usize>> = vec![Vec::new(); n];
    let mut chains = Vec::new();
    for (u, cs) in consumers.iter().enumerate() {
        for &v in cs {
            let mut chain = vec![u];
            for c in col[u] + 1..col[v] {
                vcol.push(c);
                succ.push(Vec::new());
                pred.push(Vec::new());
                chain.push(vcol.len() - 1);
            }
            chain.push(v);
            for w in chain.windows(2) {
                succ[w[0]].push(w[1]);
                pred[w[1]].push(w[0]);
            }
            chains.push((u, v, chain));
        }
    }
    let mut columns: Vec<Vec<usize>> = vec![Vec::new(); cols];
    for (x, &c) in vcol.iter().enumerate() {
        columns[c].push(x);
    }
    let grid = Grid {
        succ: &succ,
        pred: &pred,
        vertices: vcol.len(),
    };
    let (mut best, mut best_crossings) = grid.order(columns.clone());
    // small graphs: a few more starts (shuffled deterministically) to leave local optima
    if vcol.len() <= TRANSPOSE_LIMIT {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..RESTARTS {
            if best_crossings == 0 {
                break;
            }
            let mut start = columns.clone();
            for column in &mut start {
                for i in (1..column.len()).rev() {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    column.swap(i, (state >> 33) as usize % (i + 1));
                }
            }
            let (order, crossings) = grid.order(start);
            if crossings < best_crossings {
                (best, best_crossings) = (order, crossings);
            }
        }
    }
    let rows = best.iter().map(Vec::len).max().unwrap_or(0);
    let mut vrow = vec![0.0; vcol.len()];
    for column in &best {
        let offset = (rows - column.len()) as f64 / 2.0;
        for (i, &x) in column.iter().enumerate() {
            vrow[x] = i as f64 + offset;
        }
    }
    // one path per use: x·x draws both of mul's arguments
    let mut paths: Vec<EdgePath> = Vec::new();
    for (from, to, chain) in chains {
        let points: Vec<[f64; 2]> = chain.iter().map(|&x| [vcol[x] as f64, vrow[x]]).collect();
        for (arg, _) in inputs[to].iter().enumerate().filter(|(_, u)| **u == from) {
            paths.push(EdgePath {
                from,
                to,
                arg,
                points: points.clone(),
                end_dy: 0.0,
                label: [0.0, 0.0],
            });
        }
    }
    paths.sort_by_key(|p| (p.to, p.arg));
    let row = vrow[..n].to_vec();
    let g = GEOMETRY;
    let width = 2.0 * g.margin + cols.max(1) as f64 * g.col_w - (g.col_w - g.node_w);
    let height = 2.0 * g.top + rows.max(1) as f64 * g.row_h - (g.row_h - g.node_h);
    // edges into one node end at different heights, in the order they arrive from
    let mut start = 0;
    while start < paths.len() {
        let to = paths[start].to;
        let end = start + paths[start..].iter().take_while(|p| p.to == to).count();
        let mut order: Vec<usize> = (start..end).collect();
        order.sort_by(|&a, &b| {
            let before = |p: &EdgePath| p.points[p.points.len() - 2][1];
            before(&paths[a]).total_cmp(&before(&paths[b]))
        });
        let k = order.len();
        for (i, &p) in order.iter().enumerate() {
            paths[p].end_dy = if k == 1 {
                0.0
            } else {
                (i as f64 / (k - 1) as f64 - 0.5) * (g.node_h - 24.0)
            };
        }
        start = end;
    }
    let mut boxes: Vec<Vec<f64>> = vec![Vec::new(); cols];
    for v in 0..n {
        boxes[col[v]].push(g.top + row[v] * g.row_h);
    }
    for p in &mut paths {
        let pixels = pixel_points(p, g);
        p.label = place_label(&pixels, &boxes, height, g);
    }
    Layout {
        col,
        row,
        cols,
        rows,
        paths,
        crossings: best_crossings,
        geometry: g,
        width,
        height,
    }
}

/// The points an edge's curve passes through, in pixels: out of `from`'s right side,
/// through the middle of each waypoint's column, into `to`'s left side.
fn pixel_points(p: &EdgePath, g: Geometry) -> Vec<[f64; 2]> {
    let last = p.points.len() - 1;
    p.points
        .iter()
        .enumerate()
        .map(|(i, &[c, r])| {
            let x = g.margin + c * g.col_w;
            let y = g.top + r * g.row_h + g.node_h / 2.0;
            match i {
                0 => [x + g.node_w, y],
                _ if i == last => [x, y + p.end_dy],
                _ => [x + g.node_w / 2.0, y],
            }
        })
        .collect()
}

/// The edge's height at `x`, along the straight segments between its points.
fn height_at(points: &[[f64; 2]], x: f64) -> f64 {
    for w in points.windows(2) {
        if x <= w[1][0] {
            let t = ((x - w[0][0]) / (w[1][0] - w[0][0])).clamp(0.0, 1.0);
            return w[0][1] + t * (w[1][1] - w[0][1]);
        }
    }
    points[points.len() - 1][1]
}

/// The centre of a label for the edge through `points`: for each segment, the label
/// centred on it or pushed against either end, at the height nearest the edge's where
/// its box meets no node (`tops`: each column's node tops). The drawing's top and bottom
/// margins hold a label when nothing nearer is free.
fn place_label(points: &[[f64; 2]], tops: &[Vec<f64>], height: f64, g: Geometry) -> [f64; 2] {
    let half_w = g.label_w / 2.0;
    let half_h = g.label_h / 2.0;
    let (lo, hi) = (half_h + 1.0, height - half_h - 1.0);
    let mut best: Option<(f64, [f64; 2])> = None;
    for w in points.windows(2) {
        let (a, b) = (w[0][0], w[1][0]);
        for x in [(a + b) / 2.0, a + 4.0 + half_w, b - 4.0 - half_w] {
            let target = height_at(points, x).clamp(lo, hi);
            // the centre heights at which the label's box would meet a node's
            let mut blocked: Vec<(f64, f64)> = Vec::new();
            for (c, column) in tops.iter().enumerate() {
                let left = g.margin + c as f64 * g.col_w;
                if left - LABEL_GAP >= x + half_w || left + g.node_w + LABEL_GAP <= x - half_w {
                    continue;
                }
                for &top in column {
                    blocked.push((
                        top - LABEL_GAP - half_h,
                        top + g.node_h + LABEL_GAP + half_h,
                    ));
                }
            }
            let free =
                |y: f64| y >= lo && y <= hi && blocked.iter().all(|&(s, e)| y <= s || y >= e);
            let candidates = std::iter::once(target)
                .chain(blocked.iter().flat_map(|&(s, e)| [s, e]))
                .chain([lo, hi]);
            for y in candidates.filter(|&y| free(y)) {
                // nearer the edge first; then nearer the segment's middle
                let cost = (y - target).abs() + ((a + b) / 2.0 - x).abs() / 8.0;
                if best.is_none_or(|(c, _)| cost < c) {
                    best = Some((cost, [x, y]));
                }
            }
        }
    }
    best.map_or([points[0][0], lo], |(_, at)| at)
}

/// Largest grid (nodes and waypoints) whose order is refined by swapping neighbours and
/// by more starts: each trial recounts the crossings, which is quadratic in the edges.
const TRANSPOSE_LIMIT: usize = 200;
/// Shuffled starts tried on small grids.
const RESTARTS: usize = 24;

/// The grid's links: vertex → vertices in the next column, and in the previous one.
struct Grid<'a> {
    succ: &'a [Vec<usize>],
    pred: &'a [Vec<usize>],
    vertices: usize,
}

impl Grid<'_> {
    /// Barycenter sweeps from `columns`, alternating direction, then neighbour swaps on
    /// small grids; the order with the fewest crossings seen, and their number.
    fn order(&self, mut columns: Vec<Vec<usize>>) -> (Vec<Vec<usize>>, usize) {
        let cols = columns.len();
        let mut best = columns.clone();
        let mut best_crossings = count_crossings(&columns, self.succ, self.vertices);
        for sweep in 0..12 {
            if best_crossings == 0 {
                break;
            }
            let forward = sweep % 2 == 0;
            let order: Vec<usize> = if forward {
                (1..cols).collect()
            } else {
                (0..cols.saturating_sub(1)).rev().collect()
            };
            for c in order {
                let neighbour = if forward { c - 1 } else { c + 1 };
                let mut pos = vec![0.0; self.vertices];
                for (i, &x) in columns[neighbour].iter().enumerate() {
                    pos[x] = i as f64;
                }
                let links = if forward { self.pred } else { self.succ };
                let mut keyed: Vec<(f64, usize)> = columns[c]
                    .iter()
                    .enumerate()
                    .map(|(i, &x)| {
                        let ns = &links[x];
                        let key = if ns.is_empty() {
                            i as f64
                        } else {
                            ns.iter().map(|&y| pos[y]).sum::<f64>() / ns.len() as f64
                        };
                        (key, x)
                    })
                    .collect();
                keyed.sort_by(|a, b| a.0.total_cmp(&b.0));
                columns[c] = keyed.into_iter().map(|(_, x)| x).collect();
            }
            let crossings = count_crossings(&columns, self.succ, self.vertices);
            if crossings < best_crossings {
                best_crossings = crossings;
                best = columns.clone();
            }
        }
        if self.vertices <= TRANSPOSE_LIMIT {
            best_crossings = transpose(&mut best, self.succ, self.vertices, best_crossings);
        }
        (best, best_crossings)
    }
}

/// Swaps neighbours within a column while that removes crossings (the "transpose" step
/// of Gansner et al.); returns the crossings left.
fn transpose(
    columns: &mut [Vec<usize>],
    succ: &[Vec<usize>],
    vertices: usize,
    mut crossings: usize,
) -> usize {
    let mut improved = true;
    while improved && crossings > 0 {
        improved = false;
        for c in 0..columns.len() {
            for i in 1..columns[c].len() {
                columns[c].swap(i - 1, i);
                let trial = count_crossings(columns, succ, vertices);
                if trial < crossings {
                    crossings = trial;
                    improved = true;
                } else {
                    columns[c].swap(i - 1, i);
                }
            }
        }
    }
    crossings
}

/// Pairs of edges between neighbouring columns that cross.
fn count_crossings(columns: &[Vec<usize>], succ: &[Vec<usize>], vertices: usize) -> usize {
    let mut pos = vec![0usize; vertices];
    for column in columns {
        for (i, &x) in column.iter().enumerate() {
            pos[x] = i;
        }
    }
    let mut total = 0;
    for column in columns {
        let edges: Vec<(usize, usize)> = column
            .iter()
            .flat_map(|&x| succ[x].iter().map(move |&y| (x, y)))
            .map(|(x, y)| (pos[x], pos[y]))
            .collect();
        for (i, a) in edges.iter().enumerate() {
            for b in &edges[i + 1..] {
                if (a.0 < b.0 && a.1 > b.1) || (a.0 > b.0 && a.1 < b.1) {
                    total += 1;
                }
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use chainrule::explain::explain;

    fn graph_of(expr: &str, at: &str) -> Vec<Vec<usize>> {
        let at = chainrule::explain::parse_assignments(at).unwrap();
        let walk = explain(expr, &at).unwrap();
        walk.forward.iter().map(|n| n.inputs.clone()).collect()
    }

    #[test]
    fn edges_run_left_to_right_without_crossings() {
        for (expr, at) in [
            ("tanh(w*x + b)", "x=2,w=-0.5,b=1.5"),
            ("x*x + sin(x)", "x=0.7"),
            ("ln(1 + exp(w*x)) - y*w*x", "x=0.5,w=2,y=1"),
            ("max(a*b, c) / (a + 2)", "a=1,b=3,c=0.5"),
            ("sigmoid(a*b + c) * a", "a=1.5,b=-2,c=0.5"),
            ("(x + y)*(x - y) + x*y", "x=1,y=2"),
        ] {
            let inputs = graph_of(expr, at);
            let l = layout(&inputs);
            assert_eq!(l.crossings, fewest_crossings(&l), "{expr}: {l:?}");
            for (v, ins) in inputs.iter().enumerate() {
                for &u in ins {
                    assert!(l.col[u] < l.col[v], "{expr}: edge {u} → {v} runs backwards");
                }
            }
            // every path moves one column per point and starts and ends at its nodes
            for p in &l.paths {
                assert_eq!(p.points[0], [l.col[p.from] as f64, l.row[p.from]]);
                assert_eq!(*p.points.last().unwrap(), [l.col[p.to] as f64, l.row[p.to]]);
                for w in p.points.windows(2) {
                    assert_eq!(w[1][0], w[0][0] + 1.0);
                }
            }
            // one path per use of an input
            let uses: usize = inputs.iter().map(Vec::len).sum();
            assert_eq!(l.paths.len(), uses, "{expr}");
            // no two nodes share a place
            for a in 0..inputs.len() {
                for b in a + 1..inputs.len() {
                    assert!(
                        (l.col[a], l.row[a].to_bits()) != (l.col[b], l.row[b].to_bits()),
                        "{expr}: nodes {a} and {b} overlap"
                    );
                }
            }
        }
    }

    #[test]
    fn labels_sit_inside_the_drawing_and_off_every_node() {
        for (expr, at) in [
            ("tanh(w*x + b)", "x=2,w=-0.5,b=1.5"),
            ("x*x + sin(x)", "x=0.7"),
            ("x^2 + 3*y", "x=1,y=2"),
            ("ln(1 + exp(w*x)) - y*w*x", "x=0.5,w=2,y=1"),
            (
                "sigmoid(c1*tanh(w1*x + b1) + c2*tanh(w2*x + b2) + d)",
                "x=0.5,w1=1,b1=0,w2=-1,b2=0.5,c1=2,c2=-1,d=0.1",
            ),
            (
                "(a*b + c*d)*(a - d) + max(a, b)^2 / (1 + c^2)",
                "a=1,b=2,c=3,d=4",
            ),
        ] {
            let inputs = graph_of(expr, at);
            let l = layout(&inputs);
            let g = l.geometry;
            for p in &l.paths {
                let [x, y] = p.label;
                let (x0, x1) = (x - g.label_w / 2.0, x + g.label_w / 2.0);
                let (y0, y1) = (y - g.label_h / 2.0, y + g.label_h / 2.0);
                assert!(
                    y0 >= 0.0 && y1 <= l.height && x0 >= 0.0 && x1 <= l.width,
                    "{expr}: label {p:?} outside {} × {}",
                    l.width,
                    l.height
                );
                for v in 0..inputs.len() {
                    let nx = g.margin + l.col[v] as f64 * g.col_w;
                    let ny = g.top + l.row[v] * g.row_h;
                    let apart = x1 <= nx || x0 >= nx + g.node_w || y1 <= ny || y0 >= ny + g.node_h;
                    assert!(
                        apart,
                        "{expr}: the label of {} → {} at {:?} covers node {v}",
                        p.from, p.to, p.label
                    );
                }
            }
        }
    }

    /// The fewest crossings any order within the columns of `l`'s grid can have, by
    /// trying every order (small graphs only).
    fn fewest_crossings(l: &Layout) -> usize {
        // rebuild the grid from the paths: one vertex per distinct point
        let mut points: Vec<(usize, u64)> = Vec::new();
        let mut succ: Vec<Vec<usize>> = Vec::new();
        let id = |p: [f64; 2], points: &mut Vec<(usize, u64)>, succ: &mut Vec<Vec<usize>>| {
            let key = (p[0] as usize, p[1].to_bits());
            points.iter().position(|&k| k == key).unwrap_or_else(|| {
                points.push(key);
                succ.push(Vec::new());
                points.len() - 1
            })
        };
        let mut seen = Vec::new();
        for p in &l.paths {
            // the grid has one chain per pair; a second use of an input shares it
            if seen.contains(&(p.from, p.to)) {
                continue;
            }
            seen.push((p.from, p.to));
            let ids: Vec<usize> = p
                .points
                .iter()
                .map(|&q| id(q, &mut points, &mut succ))
                .collect();
            for w in ids.windows(2) {
                succ[w[0]].push(w[1]);
            }
        }
        let mut columns: Vec<Vec<usize>> = vec![Vec::new(); l.cols];
        for (v, &(c, _)) in points.iter().enumerate() {
            columns[c].push(v);
        }
        fn permutations(v: &[usize]) -> Vec<Vec<usize>> {
            if v.len() <= 1 {
                return vec![v.to_vec()];
            }
            let mut out = Vec::new();
            for i in 0..v.len() {
                let mut rest = v.to_vec();
                let first = rest.remove(i);
                for mut p in permutations(&rest) {
                    p.insert(0, first);
                    out.push(p);
                }
            }
            out
        }
        let options: Vec<Vec<Vec<usize>>> = columns.iter().map(|c| permutations(c)).collect();
        let mut best = usize::MAX;
        let mut pick = vec![0usize; options.len()];
        loop {
            let grid: Vec<Vec<usize>> = pick
                .iter()
                .enumerate()
                .map(|(c, &k)| options[c][k].clone())
                .collect();
            best = best.min(count_crossings(&grid, &succ, points.len()));
            // next combination
            let mut c = 0;
            while c < pick.len() {
                pick[c] += 1;
                if pick[c] < options[c].len() {
                    break;
                }
                pick[c] = 0;
                c += 1;
            }
            if c == pick.len() {
                return best;
            }
        }
    }

    #[test]
    fn sweeps_never_add_crossings() {
        // a graph whose first order crosses: the kept order has no more crossings
        let inputs = vec![vec![], vec![], vec![], vec![0, 2], vec![1], vec![3, 4]];
        let l = layout(&inputs);
        assert_eq!(l.crossings, 0, "{l:?}");
        assert_eq!(l.cols, 3);
    }

    #[test]
    fn a_long_chain_stays_flat() {
        // x, then 5000 sin(...) around it: one row, and no recursion to overflow
        let n = 5000;
        let inputs: Vec<Vec<usize>> = (0..n)
            .map(|v| if v == 0 { vec![] } else { vec![v - 1] })
            .collect();
        let l = layout(&inputs);
        assert_eq!((l.cols, l.rows, l.crossings), (n, 1, 0));
    }
}
