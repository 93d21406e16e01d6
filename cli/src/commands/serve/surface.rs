//! A function of two variables `x` and `y` in the walk's grammar, recorded on the
//! library's tape: its values on a grid (one recording with `x` and `y` as grid-shaped
//! tensors), and its Hessian at a point (two Hessian-vector products, forward over reverse).

use chainrule::autodiff::{Tape, Var, hvp};
use chainrule::explain::{Expr, parse};
use chainrule::tensor::{BinaryOp, Tensor};

/// A parsed expression whose variables are among `x` and `y`.
pub(super) struct Surface {
    expr: Expr,
}

impl Surface {
    /// Parses `text`; the error is one line naming what is wrong.
    pub(super) fn parse(text: &str) -> Result<Surface, String> {
        let expr = parse(text).map_err(|e| match e {
            chainrule::Error::Expression { column, msg, .. } => {
                format!("the expression, column {column}: {msg}")
            }
            e => format!("the expression: {e}"),
        })?;
        if let Some(other) = expr.variables().into_iter().find(|v| v != "x" && v != "y") {
            return Err(format!(
                "the expression may use x and y only; it uses '{other}'"
            ));
        }
        Ok(Surface { expr })
    }

    /// Records the expression on `tape` with `x` and `y` bound to the given variables.
    pub(super) fn record<'t>(
        &self,
        tape: &'t Tape<f64>,
        x: Var<'t, f64>,
        y: Var<'t, f64>,
    ) -> chainrule::Result<Var<'t, f64>> {
        record(&self.expr, tape, x, y)
    }

    /// The values on an `n`×`n` grid over `[x0, x1]`×`[y0, y1]`, row by row from `y0`;
    /// `None` where the value is not finite.
    pub(super) fn grid(
        &self,
        n: usize,
        [x0, x1, y0, y1]: [f64; 4],
    ) -> chainrule::Result<Vec<Option<f64>>> {
        let at = |a: f64, b: f64, i: usize| a + (b - a) * i as f64 / (n - 1) as f64;
        let xs: Vec<f64> = (0..n * n).map(|k| at(x0, x1, k % n)).collect();
        let ys: Vec<f64> = (0..n * n).map(|k| at(y0, y1, k / n)).collect();
        let tape = Tape::<f64>::new();
        let values = tape.no_grad(|| -> chainrule::Result<Tensor<f64>> {
            let vx = tape.constant(Tensor::from_vec(xs, &[n * n])?);
            let vy = tape.constant(Tensor::from_vec(ys, &[n * n])?);
            let out = self.record(&tape, vx, vy)?;
            // an expression without x or y is a scalar: the same value everywhere
            let v = out.value();
            Ok(if v.data().len() == 1 {
                Tensor::full(&[n * n], v.data()[0])?
            } else {
                v
            })
        })?;
        Ok(values
            .data()
            .iter()
            .map(|&v| v.is_finite().then_some(v))
            .collect())
    }

    /// The Hessian at `(x, y)`, its columns from H·e₁ and H·e₂.
    pub(super) fn hessian(&self, x: f64, y: f64) -> chainrule::Result<[[f64; 2]; 2]> {
        let at = [Tensor::scalar(x), Tensor::scalar(y)];
        let column = |e: [f64; 2]| -> chainrule::Result<[f64; 2]> {
            let r = hvp(
                |tape, v| self.record(tape, v[0], v[1]),
                &at,
                &[Tensor::scalar(e[0]), Tensor::scalar(e[1])],
            )?;
            let h = |t: &Tensor<f64>| t.data().first().copied().unwrap_or(0.0);
            Ok([h(&r.hv[0]), h(&r.hv[1])])
        };
        let (c1, c2) = (column([1.0, 0.0])?, column([0.0, 1.0])?);
        Ok([[c1[0], c2[0]], [c1[1], c2[1]]])
    }
}

/// The eigenvalues of a symmetric 2×2 matrix, smaller first.
pub(super) fn eigenvalues(h: [[f64; 2]; 2]) -> [f64; 2] {
    // rounding can leave the two off-diagonal entries a few ulps apart: their mean
    let (a, d, b) = (h[0][0], h[1][1], 0.5 * (h[0][1] + h[1][0]));
    let mean = 0.5 * (a + d);
    let radius = (0.25 * (a - d) * (a - d) + b * b).sqrt();
    [mean - radius, mean + radius]
}

fn record<'t>(
    e: &Expr,
    tape: &'t Tape<f64>,
    x: Var<'t, f64>,
    y: Var<'t, f64>,
) -> chainrule::Result<Var<'t, f64>> {
    let rec = |a: &Expr| record(a, tape, x, y);
    Ok(match e {
        Expr::Num(v) => tape.constant(Tensor::scalar(*v)),
        Expr::Var(n) if n == "x" => x,
        Expr::Var(_) => y,
        Expr::Neg(a) => -rec(a)?,
        Expr::Call(op, a) => rec(a)?.unary(*op),
        // a constant exponent is powf, as the walk records it: no logarithm of the base
        Expr::Bin('^', a, b) if matches!(**b, Expr::Num(_)) => {
            let Expr::Num(p) = **b else { unreachable!() };
            rec(a)?.powf(p)
        }
        Expr::Bin(c, a, b) => {
            let op = match c {
                '+' => BinaryOp::Add,
                '-' => BinaryOp::Sub,
                '*' => BinaryOp::Mul,
                '/' => BinaryOp::Div,
                _ => BinaryOp::Pow,
            };
            rec(a)?.binary(op, rec(b)?)?
        }
        Expr::MaxMin(true, a, b) => rec(a)?.maximum(rec(b)?)?,
        Expr::MaxMin(false, a, b) => rec(a)?.minimum(rec(b)?)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grid_runs_row_by_row_from_the_bottom_and_a_constant_fills_it() {
        let s = Surface::parse("x + 2*y").unwrap();
        let g = s.grid(3, [0.0, 2.0, 0.0, 2.0]).unwrap();
        let want = [0.0, 1.0, 2.0, 2.0, 3.0, 4.0, 4.0, 5.0, 6.0];
        assert_eq!(g, want.map(Some).to_vec());
        let c = Surface::parse("3")
            .unwrap()
            .grid(2, [0.0, 1.0, 0.0, 1.0])
            .unwrap();
        assert_eq!(c, vec![Some(3.0); 4]);
        // outside where ln is defined: no value, not a number drawn as one
        let l = Surface::parse("ln(x)")
            .unwrap()
            .grid(2, [-1.0, 1.0, 0.0, 1.0])
            .unwrap();
        assert_eq!(l, vec![None, Some(0.0), None, Some(0.0)]);
    }

    #[test]
    fn the_hessian_and_its_eigenvalues_are_those_of_the_formula() {
        // x²y: [[2y, 2x], [2x, 0]] at (1, 2) = [[4, 2], [2, 0]], eigenvalues 2 ∓ √8
        let h = Surface::parse("x^2*y").unwrap().hessian(1.0, 2.0).unwrap();
        assert_eq!(h, [[4.0, 2.0], [2.0, 0.0]]);
        let [lo, hi] = eigenvalues(h);
        assert!((lo - (2.0 - 8f64.sqrt())).abs() < 1e-15, "{lo}");
        assert!((hi - (2.0 + 8f64.sqrt())).abs() < 1e-15, "{hi}");
        assert_eq!(eigenvalues([[1.0, 0.0], [0.0, 50.0]]), [1.0, 50.0]);
    }

    #[test]
    fn an_expression_names_its_mistake() {
        let e = |t: &str| Surface::parse(t).err().unwrap();
        assert_eq!(e("x*w"), "the expression may use x and y only; it uses 'w'");
        assert!(
            e("x*(y").starts_with("the expression, column 5:"),
            "{}",
            e("x*(y")
        );
    }
}
